"""The control plane's view of the BPF maps it writes, as typed records (pure core).

Each map is a dict from a key record to a value record, held together by `Records`;
bpf/lb_structs.h defines the kernel layouts and ebpflb/dataplane/bcc_maps.py converts between the
two. The planner diffs records, so nothing here knows about bcc or the kernel.
"""
from enum import Enum
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

from . import abi
from .addresses import format_address


class MapId(str, Enum):
    """A map the control plane writes (or zeroes), by its name in bpf/lb_maps.h. A str, so a
    map id compares equal to its name."""

    SERVICES = "lb4_services"
    SLOTS = "lb4_slots"
    BACKENDS = "lb4_backends"
    SVC_META = "lb4_svc_meta"
    VIPS = "lb4_vips"  # VIP address -> number of frontends on it (new flows from a VIP are refused)
    SRC_RANGES = "lb4_src_ranges"  # (svc id, CIDR) -> 1: loadBalancerSourceRanges (an LPM trie)
    SVC_STATS = "lb4_svc_stats"  # per-CPU counters, zeroed when an id is given out anew
    BACKEND_STATS = "lb4_backend_stats"
    # Written from the devices, not the Services (ebpflb.dataplane.device_maps):
    NODE_IFS = "lb4_node_ifs"  # node device ifindex -> NodeIfValue (its SNAT address)
    POD_ADDRS = "lb4_pod_addrs"  # PodAddrKey -> 1: the addresses a pod device may send from
    SOCK_CFG = "lb_sock_cfg"  # 0 -> SockCfgValue: the socket hooks' settings
    # The IPv6 twins: the same records with IPv6 addresses (see IPV6_TWINS).
    SERVICES6 = "lb6_services"
    BACKENDS6 = "lb6_backends"
    VIPS6 = "lb6_vips"
    SRC_RANGES6 = "lb6_src_ranges"
    NODE_IFS6 = "lb6_node_ifs"
    POD_ADDRS6 = "lb6_pod_addrs"

    def __str__(self) -> str:
        return self.value


SERVICES = MapId.SERVICES
SLOTS = MapId.SLOTS
BACKENDS = MapId.BACKENDS
SVC_META = MapId.SVC_META
VIPS = MapId.VIPS
SRC_RANGES = MapId.SRC_RANGES
SVC_STATS = MapId.SVC_STATS
BACKEND_STATS = MapId.BACKEND_STATS
NODE_IFS = MapId.NODE_IFS
POD_ADDRS = MapId.POD_ADDRS
SOCK_CFG = MapId.SOCK_CFG
SERVICES6 = MapId.SERVICES6
BACKENDS6 = MapId.BACKENDS6
VIPS6 = MapId.VIPS6
SRC_RANGES6 = MapId.SRC_RANGES6
NODE_IFS6 = MapId.NODE_IFS6
POD_ADDRS6 = MapId.POD_ADDRS6
# The maps the control plane owns, in no particular order; conntrack and counters belong to the
# programs and are only read (and zeroed when an id is given to a new frontend or backend).
CONTROL_MAPS = (SERVICES, SLOTS, BACKENDS, SVC_META, VIPS, SRC_RANGES)

# A record holds its address as text, IPv4 or IPv6, and the planner sees one table per kind of
# record (the IPv4 map's id names it). The kernel keeps IPv6 records in a twin map of their own,
# with the same ids (slots, names and counters serve both families): a step of a plan, and the
# MapWriter, name the kernel map (`kernel_map`), and read_snapshot merges the twins back.
IPV6_TWINS = {SERVICES: SERVICES6, BACKENDS: BACKENDS6, VIPS: VIPS6, SRC_RANGES: SRC_RANGES6,
              POD_ADDRS: POD_ADDRS6}
TABLE_OF = {twin: table for table, twin in IPV6_TWINS.items()}  # a kernel map -> its table
KERNEL_CONTROL_MAPS = CONTROL_MAPS + tuple(IPV6_TWINS[m] for m in CONTROL_MAPS if m in IPV6_TWINS)


def is_ipv6(address: str) -> bool:
    """Whether a record's address (or CIDR) is IPv6: the text holds a colon."""
    return ":" in address


def record_address(table: MapId, key: Any, value: Any) -> Optional[str]:
    """The address that says which family's map a record of `table` goes to (None: one map)."""
    if table == SERVICES:
        return key.vip
    if table == VIPS:
        return key
    if table == SRC_RANGES:
        return key.cidr
    if table == BACKENDS:
        return value.addr
    if table == POD_ADDRS:
        return key.addr
    return None


def kernel_map(table: MapId, key: Any, value: Any) -> MapId:
    """The kernel map a record of `table` lives in: the IPv6 twin for an IPv6 address."""
    twin = IPV6_TWINS.get(table)
    if twin is None:
        return table
    address = record_address(table, key, value)
    return twin if address is not None and is_ipv6(address) else table

SVC_F_MAGLEV = abi.LB4_SVC_F_MAGLEV
SVC_F_ETP_LOCAL = abi.LB4_SVC_F_ETP_LOCAL  # externalTrafficPolicy Local (no SNAT, local only)
SVC_F_SRC_RANGES = abi.LB4_SVC_F_SRC_RANGES  # new flows only from the frontend's SRC_RANGES
SVC_F_DRAINING = abi.LB4_SVC_F_DRAINING  # a removed TCP frontend kept for its open flows
SVC_F_DROP_EMPTY = abi.LB4_SVC_F_DROP_EMPTY  # no backend here, endpoints elsewhere: drop
SVC_F_TOPO_NODE = abi.LB4_SVC_F_TOPO_NODE  # slots from the endpoints hinted for this node
SVC_F_TOPO_ZONE = abi.LB4_SVC_F_TOPO_ZONE  # slots from the endpoints hinted for this zone
BE_F_NO_NEW = abi.LB4_BE_F_NO_NEW
SLOT_REJECT = abi.LB4_SLOT_REJECT  # a slot of the reject share: new flows refused
SVC_KIND_SHIFT = abi.LB4_SVC_KIND_SHIFT  # the frontend kind: bits 4-5 of the service flags
FRONTEND_KINDS = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalIP")


def frontend_kind(flags: int) -> str:
    return FRONTEND_KINDS[(flags & abi.LB4_SVC_KIND_MASK) >> SVC_KIND_SHIFT]

PROTO_NUMBERS = {"TCP": 6, "UDP": 17}
PROTO_NAMES = {number: name for name, number in PROTO_NUMBERS.items()}

SVC_NAME_LEN = abi.LB4_SVC_NAME_LEN  # including the terminating NUL

# ct4_entry.flags: read by the conntrack GC, the CLI and explain.
CT_F_ESTABLISHED = abi.CT_F_ESTABLISHED
CT_F_CLOSING = abi.CT_F_CLOSING
CT_F_HAIRPIN = abi.CT_F_HAIRPIN
CT_F_EXTERNAL = abi.CT_F_EXTERNAL
CT_F_SNAT = abi.CT_F_SNAT
CT_F_PORT_NAT = abi.CT_F_PORT_NAT  # the flow's source port was rewritten (nat2), its address kept
CT_F_RESET = abi.CT_F_RESET  # this side sent a RST: the flow is over both ways
CT_F_NETFILTER = abi.CT_F_NETFILTER  # netfilter translates the flow (taken over from kube-proxy)
CT_F_HANDOVER = abi.CT_F_HANDOVER  # ... being handed over to the data path: its packets dropped
CT_F_SRC_NAT = CT_F_SNAT | CT_F_PORT_NAT  # ct4_src_nat(): the source was rewritten
HAIRPIN_ADDR = str(IPv4Address(abi.LB4_HAIRPIN_ADDR_HOST))
HAIRPIN_ADDR6 = str(IPv6Address(b"".join(w.to_bytes(4, "big") for w in (
    abi.LB6_HAIRPIN_ADDR_W0, abi.LB6_HAIRPIN_ADDR_W1, abi.LB6_HAIRPIN_ADDR_W2,
    abi.LB6_HAIRPIN_ADDR_W3))))  # 64:ff9b:1::a9fe:2a01


class SvcKey(NamedTuple):
    vip: str
    port: int
    proto: int
    scope: int = 0  # LB4_SCOPE_*: 0 every client; 1 traffic from outside (Local policy)

    def __str__(self) -> str:
        return (f"{format_address(self.vip, self.port)}/{PROTO_NAMES.get(self.proto, self.proto)}"
                + ("@external" if self.scope else ""))


class SvcValue(NamedTuple):
    svc_id: int
    count: int
    flags: int = 0
    affinity_timeout: int = 0  # seconds; 0 when the Service has no ClientIP affinity


class SrcRangeKey(NamedTuple):
    """One loadBalancerSourceRanges prefix of a frontend; the kernel key is
    {prefixlen: 32 + the CIDR's, svc_id, addr}, so one LPM trie holds every frontend's ranges."""
    svc_id: int
    cidr: str  # IPv4, normalized ("10.0.0.0/8")

    def __str__(self) -> str:
        return f"svc {self.svc_id} from {self.cidr}"


class NodeIfValue(NamedTuple):
    """A node device's entry: the IPv4 address flows to backends behind it are SNATed to."""
    addr: str
    flags: int = 0  # reserved

    def __str__(self) -> str:
        return f"SNAT to {self.addr}"


class SockCfgValue(NamedTuple):
    """The socket hooks' settings (lb_sock_cfg[0]): LB_SOCK_* mode, and the node's network
    namespace cookie (host-only mode balances only sockets of that namespace)."""
    host_netns_cookie: int
    mode: int


POD_ADDR_MARKER = "0.0.0.0"  # a pod device's entry saying its sources are checked
POD_ADDR_MARKER6 = "::"  # the same in lb6_pod_addrs: the device's IPv6 sources are checked
POD_ADDR_MARKERS = (POD_ADDR_MARKER, POD_ADDR_MARKER6)


class PodAddrKey(NamedTuple):
    """An address the pod behind device `ifindex` may send from. POD_ADDR_MARKER is the device's
    marker: present, the device's sources are checked; absent, any source passes."""
    ifindex: int
    addr: str

    def __str__(self) -> str:
        return f"device {self.ifindex} {self.addr}"


class Counters(NamedTuple):
    """The traffic counters of a frontend or a backend (struct lb_flow_stats, field for field;
    tests/unit/test_abi.py checks the order against the compiled layout), summed over CPUs."""
    packets_in: int
    bytes_in: int
    packets_out: int
    bytes_out: int
    conns: int


FLOW_FIELDS = Counters._fields


class SlotKey(NamedTuple):
    svc_id: int
    slot: int


class BackendValue(NamedTuple):
    addr: str
    port: int
    proto: int
    svc_id: int  # the frontend this backend record belongs to
    flags: int = 0  # BE_F_NO_NEW for a draining (weight 0) backend

    def __str__(self) -> str:
        return f"{format_address(self.addr, self.port)}/{PROTO_NAMES.get(self.proto, self.proto)}"


NO_BACKEND = 0

_FIELDS = {SERVICES: "services", SLOTS: "slots", BACKENDS: "backends", SVC_META: "meta",
           VIPS: "vips", SRC_RANGES: "src_ranges"}


class Records:
    """The records of the control-plane maps (all of them, or one Service's). Meta values are
    display names. `slots` is the exception to one-record-per-key: svc id -> the frontend's whole
    slot table, a tuple of backend ids indexed by slot (0 where the kernel map lacks a slot). A
    table compares in one step, so a plan over large Maglev tables costs little when they did not
    change; writes are still per SlotKey."""

    __slots__ = ("services", "slots", "backends", "meta", "vips", "src_ranges")

    def __init__(self, services: Optional[Dict["SvcKey", "SvcValue"]] = None,
                 slots: Optional[Dict[int, Tuple[int, ...]]] = None,
                 backends: Optional[Dict[int, "BackendValue"]] = None,
                 meta: Optional[Dict[int, str]] = None, vips: Optional[Dict[str, int]] = None,
                 src_ranges: Optional[Dict["SrcRangeKey", int]] = None) -> None:
        self.services: Dict[SvcKey, SvcValue] = services if services is not None else {}
        self.slots: Dict[int, Tuple[int, ...]] = slots if slots is not None else {}
        self.backends: Dict[int, BackendValue] = backends if backends is not None else {}
        self.meta: Dict[int, str] = meta if meta is not None else {}
        self.vips: Dict[str, int] = vips if vips is not None else {}
        self.src_ranges: Dict[SrcRangeKey, int] = src_ranges if src_ranges is not None else {}

    def __getitem__(self, map_id: str) -> Dict[Any, Any]:
        map_id = MapId(map_id)
        return getattr(self, _FIELDS[TABLE_OF.get(map_id, map_id)])

    def get(self, map_id: str, default: Any = None) -> Dict[Any, Any]:
        return self[map_id] if map_id in _FIELDS or map_id in TABLE_OF else default

    def __iter__(self) -> Iterator[MapId]:
        return iter(_FIELDS)

    def keys(self) -> Iterator[MapId]:
        return iter(_FIELDS)

    def __contains__(self, map_id: object) -> bool:
        return map_id in _FIELDS

    def items(self) -> Iterator[Tuple[MapId, Dict[Any, Any]]]:
        for map_id, attr in _FIELDS.items():
            yield map_id, getattr(self, attr)

    def copy(self) -> "Records":
        return Records(dict(self.services), dict(self.slots), dict(self.backends),
                       dict(self.meta), dict(self.vips), dict(self.src_ranges))

    def sizes(self) -> Dict[MapId, int]:
        """Kernel entries per kernel map (a slot table counts its slots; an IPv6 record counts
        in its twin map)."""
        out: Dict[MapId, int] = {}
        for map_id, table in self.items():
            if map_id == SLOTS:
                out[map_id] = sum(len(t) for t in table.values())
            elif map_id in IPV6_TWINS:
                if map_id == BACKENDS:
                    ipv6 = sum(1 for v in table.values() if ":" in v.addr)
                elif map_id == SERVICES:
                    ipv6 = sum(1 for k in table if ":" in k.vip)
                else:
                    ipv6 = sum(1 for k in table if ":" in record_address(map_id, k, None))
                out[map_id] = len(table) - ipv6
                out[IPV6_TWINS[map_id]] = ipv6
            else:
                out[map_id] = len(table)
        return out

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Records):
            return NotImplemented
        return all(getattr(self, a) == getattr(other, a) for a in self.__slots__)

    def __repr__(self) -> str:
        return "Records(" + ", ".join(f"{a}={len(getattr(self, a))}" for a in self.__slots__) + ")"


Snapshot = Records  # what the maps hold, as the planner sees it


def slot_tables(records: Dict["SlotKey", int]) -> Dict[int, Tuple[int, ...]]:
    """Per-slot records, as a map dump gives them, grouped into one table per frontend."""
    tables: Dict[int, List[int]] = {}
    for key, backend_id in records.items():
        table = tables.setdefault(key.svc_id, [])
        table.extend([NO_BACKEND] * (key.slot + 1 - len(table)))
        table[key.slot] = backend_id
    return {svc_id: tuple(table) for svc_id, table in tables.items()}


def slot_count(snapshot: Snapshot) -> int:
    return sum(len(table) for table in snapshot.slots.values())


def empty_snapshot() -> Snapshot:
    return Records()
